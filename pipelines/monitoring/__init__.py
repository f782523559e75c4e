"""``mlops monitor``: the serving release measured against its own reference.

* :mod:`.window`: the served traffic of a window, read from the prediction and labels logs
  (and their rotated siblings);
* :mod:`.reference`: what the release was trained and validated on (data by its recorded
  hash, holdout predictions, holdout figures);
* :mod:`.checks`: the pure statistics (drift, quality with a confidence interval, the
  label-free estimate and its calibration check);
* :mod:`.result`: the typed result and its markdown;
* :mod:`.monitor`: ``run``, which measures and logs to MLflow;
* :mod:`.retrain`: a retraining proposal as a branch with one commit.
"""
