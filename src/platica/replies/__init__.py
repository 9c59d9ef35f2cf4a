"""The reply pipeline: context, generation, shaping, sending."""
