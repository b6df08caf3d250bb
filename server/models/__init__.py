"""Pydantic models of request bodies, field for field with OpenAI's spec."""
