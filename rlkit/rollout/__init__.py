"""What runs inside rollout actors: the worker, its generation engines, multi-turn episodes.
The driver's side of generation (scheduling, recovery) is ``rlkit/driver/``."""
