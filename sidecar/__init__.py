"""stepguard: a Cedar policy decision point that workflow orchestrators call before every step."""

__version__ = "0.1.0"
