"""What the OpenAPI document says of the answers' fields that Litestar cannot describe alone.

A record is served as the JSON text the mirror stored (`msgspec.Raw`, schemas.py), which
Litestar sees as a value of any type. The contract's record is an object: this plugin says
so, for every `msgspec.Raw` field (a record is the only one).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
from litestar.openapi.spec import OpenAPIType, Schema
from litestar.plugins import OpenAPISchemaPlugin
from litestar.typing import FieldDefinition

if TYPE_CHECKING:
    from litestar._openapi.schema_generation import SchemaCreator

RECORD_DESCRIPTION = (
    "The record as its repository published it: a JSON object (Lexicon data model), "
    "served as stored."
)


class RecordJsonSchema(OpenAPISchemaPlugin):
    def is_plugin_supported_field(self, field_definition: FieldDefinition) -> bool:
        return field_definition.annotation is msgspec.Raw

    def to_openapi_schema(
        self, field_definition: FieldDefinition, schema_creator: SchemaCreator
    ) -> Schema:
        return Schema(type=OpenAPIType.OBJECT, description=RECORD_DESCRIPTION)
