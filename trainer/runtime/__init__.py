"""The process: distributed set-up, preemption, DeepSpeed's op builds."""
