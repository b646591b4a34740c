"""Using a trained network: evaluation, the predictor, retrieval, export, published weights, the HTTP service."""
