"""TorchServe: archives, the server, its operations and its clients (REST, gRPC, keys), the container entry point."""
