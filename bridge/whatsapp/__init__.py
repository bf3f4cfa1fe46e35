"""Everything that speaks Meta's WhatsApp Cloud API: webhook payloads, signatures, Graph sends."""
