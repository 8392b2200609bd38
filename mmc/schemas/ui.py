"""The MMC web UI's shell: what its HTTP calls take and answer."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from mmc.schemas.base import InputSchema


class PingQuerySchema(InputSchema):
    connection = fields.String(
        validate=validate.Length(min=1, max=256),
        metadata={
            "description": "The connection (id or name) to ask about; default: the one the "
            "session's UI selected (connectToBroker), else the UI's own default (the "
            "first connected connection)"
        },
    )


class PongSchema(Schema):
    pong = fields.Boolean(required=True)


class UiConfigSchema(Schema):
    hide_connections = fields.Boolean(data_key="hideConnections", required=True)
    hide_info_page = fields.Boolean(data_key="hideInfoPage", required=True)
    hide_logout_button = fields.Boolean(data_key="hideLogoutButton", required=True)
    hide_profile_button = fields.Boolean(data_key="hideProfileButton", required=True)


class NewsletterSchema(Schema):
    newsletter_endpoint_available = fields.Boolean(
        data_key="newsletterEndpointAvailable", required=True
    )


class BackendParametersSchema(Schema):
    is_premium = fields.Boolean(data_key="isPremium", required=True)
    multiple_connections_allowed = fields.Boolean(
        data_key="multipleConnectionsAllowed", required=True
    )
    show_feedback_form = fields.Boolean(data_key="showFeedbackForm", required=True)
    show_streemsheets = fields.Boolean(data_key="showStreemsheets", required=True)
    root_username = fields.String(data_key="rootUsername", required=True)
    sso_used = fields.Boolean(data_key="ssoUsed", required=True)
    treat_usernames_as_client_ids = fields.Boolean(
        data_key="treatUsernamesAsClientIds", required=True
    )
    url_mappings = fields.Dict(data_key="urlMappings", required=True)
    system_status = fields.Dict(
        data_key="systemStatus",
        required=True,
        metadata={
            "description": "Connection name -> {_name, $SYS: {broker: {...}}}, the $SYS "
            "values each connected broker published (strings)"
        },
    )


ping_query_schema = PingQuerySchema()
