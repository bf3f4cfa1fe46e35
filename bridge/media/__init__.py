"""Inbound media: the encrypted media store, the fetch-and-transcribe worker, transcription."""
