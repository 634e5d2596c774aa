"""Config-driven transforms of the events a connector moves: filters and transformers.

``eventmesh`` reads Apache EventMesh's filter patterns and transformers, so rules written for EventMesh
keep working.
"""
