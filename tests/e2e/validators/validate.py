#!/usr/bin/env python3
"""Validates Rampart's compliance output with independent, established validators.

    validate.py cyclonedx FILE   CycloneDX 1.6 JSON schema (cyclonedx-python-lib, strict)
    validate.py spdx FILE        SPDX 2.3 (spdx-tools: parse + validate_full_spdx_document)
    validate.py spdx3 FILE       SPDX 3.0.1 JSON-LD (spdx-python-model, the SPDX project's
                                 bindings generated from the SHACL model: types, value
                                 patterns, references and required properties)
    validate.py openvex FILE     the published OpenVEX 0.2.0 JSON schema (jsonschema)

Prints the errors and exits 1 when the document is invalid, 0 when it is valid.
"""
import json
import pathlib
import sys


def cyclonedx(path):
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    errors = JsonStrictValidator(SchemaVersion.V1_6).validate_str(pathlib.Path(path).read_text())
    return [str(errors)] if errors else []


def spdx(path):
    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    doc = parse_file(path)
    return [m.validation_message for m in validate_full_spdx_document(doc)]


def spdx3(path):
    from spdx_python_model import v3_0_1 as model

    errors = []
    doc = json.loads(pathlib.Path(path).read_text())
    if doc.get("@context") != "https://spdx.org/rdf/3.0.1/spdx-context.jsonld":
        errors.append(f"@context: {doc.get('@context')!r} is not the SPDX 3.0.1 context")
    objects = model.SHACLObjectSet()
    try:
        # Decoding checks every type name, property name, value type and pattern.
        with open(path) as f:
            model.JSONLDDeserializer().read(f, objects)
    except Exception as e:  # the model raises TypeError/ValueError/KeyError by case
        return errors + [f"decode: {type(e).__name__}: {e}"]
    # Every reference must resolve to an element of the document.
    missing = objects.link()
    errors += [f"unresolved reference: {m}" for m in sorted(missing)]
    # Encoding enforces required properties and cardinalities.
    try:
        import io

        model.JSONLDSerializer().write(objects, io.BytesIO())
    except Exception as e:
        errors.append(f"encode: {type(e).__name__}: {e}")
    docs = [o for o in objects.foreach_type(model.SpdxDocument)]
    if len(docs) != 1:
        errors.append(f"{len(docs)} SpdxDocument elements (1 expected)")
    return errors


def openvex(path):
    import jsonschema

    here = pathlib.Path(__file__).parent
    schema = json.loads((here / "schemas" / "openvex_json_schema_0.2.0.json").read_text())
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    doc = json.loads(pathlib.Path(path).read_text())
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]


def main():
    kind, path = sys.argv[1], sys.argv[2]
    errors = {"cyclonedx": cyclonedx, "spdx": spdx, "spdx3": spdx3, "openvex": openvex}[kind](path)
    for e in errors:
        print(e)
    print(f"{kind}: {path}: {'INVALID' if errors else 'valid'}")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
