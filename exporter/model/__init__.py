"""The data of a cycle: GPU readings and snapshot, Kubernetes types, vocabulary."""
