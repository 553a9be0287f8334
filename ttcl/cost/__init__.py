"""Pricing a program before it runs: model facts and the FLOPs formula (`facts`), the static
estimator over the DAG (`estimator`), and measured priors from earlier runs (`calibration`)."""
