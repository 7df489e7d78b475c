"""Hyperparameter sweeps over train.py runs: `python sweep.py hparams_search=<name>`.

space.py           the search space, in Hydra's sweep grammar (choice/range/interval/tag(log))
spec.py            the sweep read from conf/sweep.yaml, checked before any trial; its identity
trials.py          one trial = one `python train.py` run in <sweep dir>/trial_<n>
launchers.py       where trials run: local subprocesses (n_jobs at once) or submitit/SLURM jobs
optuna_backend.py  Optuna study in <sweep dir>/study.db: TPE/random, median/hyperband pruning, resume
grid.py            the grid backend (Optuna's GridSampler over the finite values)
wandb_sweep.py     the space as a W&B sweep config, run by W&B agents
summary.py         sweep_summary.json, the best trial as a command and as an experiment config
report.py          the sweep report: metric-vs-parameter plots, history, totals + lmforge.report
"""
