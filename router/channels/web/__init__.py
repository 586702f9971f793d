"""The web chat: ``cloudbunch web`` serves a chat page and one WebSocket per browser tab
(:mod:`.gateway`), keeping each conversation in Redis (:mod:`.history`)."""
