"""Scale-out: how a net is wrapped and materialised for every strategy, and how distributed runs are launched.

wrap.py     what LMObjective.configure_model applies: activation checkpointing, torch.compile, FSDP2 per block
fsdp.py     `trainer=fsdp`: Lightning's ModelParallelStrategy as FSDP2 over all ranks, with its options
tensor.py   tensor (+ sequence) parallelism by the family's tp_plan(), its config checks, and the mesh-aware grad norm
pipeline.py `trainer=pp`: stages by the family's pipeline_plan(), torch's GPipe/1F1B schedules, DP x PP, its checks
init.py     building the net on the meta device and materialising it with the same weights on any world size
launch.py   ranks Lightning starts itself run exactly this Hydra job, in this job's run folder
checkpoint.py  consolidate a sharded (FSDP/TP) checkpoint folder into one file that exports and resumes anywhere
"""
