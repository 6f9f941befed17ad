# SIGUSR1 (--signal=B:...) reaches this shell alone: pass it to the ranks, which save and exit 75.
{{ command }} &
step=$!
trap 'echo "[$(date +%FT%T)] SIGUSR1: asking the ranks to save and stop"; kill -USR1 $step' USR1
while kill -0 $step 2>/dev/null; do wait $step; done
wait $step; status=$?
if [ $status -eq 75 ]; then
    echo "[$(date +%FT%T)] rvae {{ stage }}: saved and stopped (exit 75); requeueing job $SLURM_JOB_ID"
    scontrol requeue $SLURM_JOB_ID && exit 0
fi
exit $status
