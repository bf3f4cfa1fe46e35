"""whatsapp-bridge: WhatsApp Cloud API webhooks to an AI assistant, conversations kept safe."""

__version__ = "0.1.0"
