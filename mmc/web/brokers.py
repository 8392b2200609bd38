"""The broker a request's path names: shared by every route under
``/api/projects/{projectId}/brokers/{brokerId}``."""

from __future__ import annotations

from aiohttp import web

from mmc.appkeys import connections_key
from mmc.brokers.link import BrokerLink
from mmc.errors import NotFound


def project_broker(request: web.Request) -> BrokerLink | None:
    """The link of the path's ``brokerId`` when it belongs to the path's ``projectId``."""
    link = request.app[connections_key].pool.get(request.match_info["brokerId"])
    project_id = request.match_info.get("projectId")
    if link is None or (project_id is not None and link.record.project_id != project_id):
        return None
    return link


def connected_project_broker(request: web.Request) -> BrokerLink:
    """The path's broker for a request to it: 404 unless it is in the path's project,
    503 unless its link is connected."""
    link = project_broker(request)
    if link is None:
        project_id = request.match_info.get("projectId")
        where = f" in project {project_id}" if project_id is not None else ""
        raise NotFound(f"Broker {request.match_info['brokerId']} not found{where}")
    return request.app[connections_key].pool.require_connected(link.id)
