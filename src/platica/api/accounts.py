"""REST API under /api/accounts, for the admin token only: list, read, change (name, numbers) and
delete accounts."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from sqlalchemy import select

from platica import accounts
from platica.api.auth import Caller, CallerDep
from platica.deps import StateDep
from platica.errors import Forbidden
from platica.models import Account, Channel
from platica.schemas import AccountDeleted, AccountRead, AccountUpdate

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or invalid credentials"},
    403: {"description": "Not the admin token: an account's key cannot manage accounts"},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No account with that id"}}


def admin_caller(caller: CallerDep) -> Caller:
    """The caller, when it holds the admin token."""
    if caller.principal.kind != "admin":
        raise Forbidden("only the admin token (PLATICA_ADMIN_TOKEN) can manage accounts")
    return caller


AdminDep = Annotated[Caller, Depends(admin_caller)]
# Named `id` in the path: get_caller's `account_id` query parameter (the admin acting for an
# account) has that name already.
AccountId = Annotated[uuid.UUID, Path(alias="id", description="The account's id")]
router = APIRouter(prefix="/api/accounts", tags=["accounts"], responses=ERRORS)


async def _read(caller: Caller, account: Account) -> dict[str, Any]:
    numbers = await accounts.account_numbers(caller.session, account.id)
    return {
        "id": account.id,
        "name": account.name,
        "created_at": account.created_at,
        "whatsapp_number": numbers.get(Channel.whatsapp),
        "sms_number": numbers.get(Channel.sms),
        "retention_days": account.retention_days,
    }


@router.get("", response_model=list[AccountRead])
async def list_accounts(caller: AdminDep) -> list[dict[str, Any]]:
    """Every account with its numbers, oldest first."""
    found = await caller.session.scalars(select(Account).order_by(Account.created_at))
    return [await _read(caller, account) for account in found]


@router.get("/{id}", response_model=AccountRead, responses=NOT_FOUND)
async def get_account(account_uuid: AccountId, caller: AdminDep) -> dict[str, Any]:
    """One account with its numbers."""
    return await _read(caller, await accounts.find_account(caller.session, str(account_uuid)))


@router.patch(
    "/{id}",
    response_model=AccountRead,
    responses={
        **NOT_FOUND,
        409: {
            "description": "The number belongs to another account, the name to another "
            "account, or the number is one a setting gives the default account"
        },
        422: {"description": "A number not in E.164, or a name not 1 to 200 characters"},
    },
)
async def update_account(
    account_uuid: AccountId, update: AccountUpdate, caller: AdminDep, state: StateDep
) -> dict[str, Any]:
    """Rename the account or change its numbers; fields left out keep their value, a number
    set to null removes that channel (and its settings)."""
    account = await accounts.find_account(caller.session, str(account_uuid))
    if update.name is not None:
        await accounts.rename_account(caller.session, account, update.name)
    for channel, field in ((Channel.whatsapp, "whatsapp_number"), (Channel.sms, "sms_number")):
        if field in update.model_fields_set:
            number = getattr(update, field)
            await accounts.set_number(caller.session, account, channel, number, state.settings)
    response = await _read(caller, account)
    await caller.session.commit()
    return response


@router.delete(
    "/{id}",
    response_model=AccountDeleted,
    responses={
        **NOT_FOUND,
        409: {"description": "The account owns a number a setting gives the default account"},
    },
)
async def delete_account(account_uuid: AccountId, caller: AdminDep, state: StateDep) -> Any:
    """Delete the account with all its data (conversations, messages, contacts, media, keys,
    templates, broadcasts, webhook log); what was deleted, counted."""
    account = await accounts.find_account(caller.session, str(account_uuid))
    identity = {"id": account.id, "name": account.name}
    deleted = await accounts.delete_account(caller.session, account, state.settings)
    await caller.session.commit()
    return {**identity, "deleted": deleted.as_dict()}
