"""PersonaVlog engine: job spec, stage graph, MACF agents, MLLM clients, run store and drivers."""

__version__ = "0.1.0"
