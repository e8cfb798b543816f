"""Backends: each wraps one inference engine or provider behind the Backend interface."""
