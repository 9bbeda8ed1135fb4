"""What a step costs: the meter, FLOPs and the memory planner."""
