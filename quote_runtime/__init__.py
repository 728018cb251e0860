"""What every process of ours needs to start: settings from the environment, logs, its
node id and its exit codes."""
