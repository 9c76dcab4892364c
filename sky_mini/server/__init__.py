"""The server side: the supervisor process, its executors and the services controller."""
