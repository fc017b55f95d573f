"""MLLM clients: one interface (`MLLMClient.chat`), backends chosen by `mllm.backend` in config."""
