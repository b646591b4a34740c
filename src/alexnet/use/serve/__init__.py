"""``alexnet serve``: the app (app.py), request reading (uploads.py), batching (batcher.py), metrics
(metrics.py) and the page (page.html)."""
