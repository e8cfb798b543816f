"""Switchyard model server: one backend behind the switchyard.v1.LLMService contract."""
