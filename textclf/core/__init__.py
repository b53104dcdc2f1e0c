"""The base every other layer of the project stands on; it imports nothing else of ours."""
