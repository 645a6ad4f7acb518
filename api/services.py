"""What the views use: settings, database, storage and publisher, built once by the application factory."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from shared.db import Database
from shared.queue import Publisher
from shared.settings import Settings
from shared.storage import Storage


@dataclass
class Services:
    settings: Settings
    db: Database
    storage: Storage
    publisher: Publisher


def services() -> Services:
    found: Services = current_app.extensions["illustrations"]
    return found
