"""Run executor and SSE encoding, shared by every API family; knows no routes."""
