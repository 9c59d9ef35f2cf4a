"""What request handlers share: the application state and its Annotated dependency aliases."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from platica.config import Settings


@dataclass
class AppState:
    """Built by the lifespan in app.py; one per application."""

    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.platica
    return state


StateDep = Annotated[AppState, Depends(get_state)]
