"""marshmallow schemas: camelCase on the wire (data_key), snake_case in Python."""
