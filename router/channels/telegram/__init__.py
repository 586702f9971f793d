"""The Telegram gateway: ``cloudbunch telegram`` (needs the ``telegram`` extra: aiogram 3)."""
