"""Switchyard router: one switchyard.v1.LLMService in front of many model servers."""
