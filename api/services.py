"""What the views use: settings, database, storage, publisher, waiter, fetcher and the key cache, built once by the
factory."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from api.clip_tokens import TokenCounter, token_counter
from api.keys import KeyCache
from api.waiting import JobWaiter
from shared.db import Database
from shared.fetch import Fetcher
from shared.queue import Publisher
from shared.settings import Settings
from shared.storage import Storage


@dataclass
class Services:
    settings: Settings
    db: Database
    storage: Storage
    publisher: Publisher
    waiter: JobWaiter
    fetcher: Fetcher
    keys: KeyCache

    def token_counter(self) -> TokenCounter:
        """CLIP token counts for prompt building (read on first use: the API may start before the model files)."""
        return token_counter(self.settings.effective_tokenizer_dir)


def services() -> Services:
    found: Services = current_app.extensions["illustrations"]
    return found
