"""What an explain folder holds, by file name: read by the report without loading torch."""

from __future__ import annotations

PAGE = "explain.html"
# What a study's report shows of each best run's explain folder (`explain.explain_best_runs`):
# the feature maps of the two drawn samples, then Grad-CAM on the first misclassified test image.
REPORTED = ("image0_feature_maps.png", "image1_feature_maps.png", "image2_attributions.png")
