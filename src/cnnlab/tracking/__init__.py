"""Where users look: a study's runs logged to TensorBoard and MLflow, live or exported."""
