#!/bin/sh
# The hand-written baseline of bench/slurm_overhead.py: one task on each of two nodes, each
# printing its rank and host name. Submitted with `sbatch --parsable` from a scratch
# directory, so the output file lands there.
#SBATCH --job-name=slurm_hello
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --output=slurm-hello-%j.out
srun sh -c 'sleep ${CORRAL_BENCH_SLEEP:-0}; echo $SLURM_PROCID $(hostname)'
