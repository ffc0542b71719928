"""Names of the per-step values that cross files: what each learner rank reports at its step, how
the driver reduces them over ranks, and what a step logs. One place, so a rename cannot leave a
reader behind."""

# a learner rank's step report (Learner.step) ...
LOSS_SUM = "loss_sum"  # Σ of the objective's loss_sum over the rank's micro-batches
NORMALIZER = "normalizer"  # the objective's normalizer of the whole step (equal on all ranks)
ENTROPY_SUM = "entropy_sum"  # Σ token entropy of the policy's own samples
TOKENS = "tokens"  # the policy's own loss tokens, skipped (inert) groups included
TRAINED_TOKENS = "trained_tokens"  # tokens the loss saw, extra rows included
SKIPPED_GROUPS = "skipped_groups"
EXTRA_ROWS = "extra_rows"
LEARNER_SECONDS = "learner_seconds"
GRAD_NORM = "grad_norm"
LEARNING_RATE = "learning_rate"
WEIGHT_EXPORT_SECONDS = "weight_export_seconds"
WEIGHTED = "_weighted"  # suffix: an objective metric times the micro-batch's trained tokens, summed

# ... reduced over ranks by the driver into
LOSS = "loss"  # Σ loss_sum / normalizer
ENTROPY = "entropy"  # Σ entropy_sum / Σ tokens
SUMMED_OVER_RANKS = (LOSS_SUM, ENTROPY_SUM, TOKENS, TRAINED_TOKENS, SKIPPED_GROUPS, EXTRA_ROWS)
SLOWEST_RANK = (LEARNER_SECONDS, GRAD_NORM, LEARNING_RATE, WEIGHT_EXPORT_SECONDS)  # equal on all ranks, or the max

# measured by the driver around the step
LEARNER_OVERLAP_SECONDS = "learner_overlap_seconds"
WEIGHT_SYNC_BYTES = "weight_sync_bytes"
WEIGHT_LOAD_SECONDS = "weight_load_seconds"
WEIGHT_GROUPS_FORMED = "weight_groups_formed"  # cluster.weight_sync: broadcast, formed so far in the run
