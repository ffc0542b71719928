"""What runs in the driver process: the step pipeline, the rollout fleet's recovery, and what the
objectives' hooks may ask of the run. Nothing here runs inside an actor (see ``rlkit/rollout/``)."""
