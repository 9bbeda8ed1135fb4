"""What a run is: RunConfig and its flags/YAML, the DeepSpeed config, recipes, Slurm's variables."""
