"""The main job as one library call: a study, its best runs explained, its report, advice."""
