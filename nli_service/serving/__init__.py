"""This process's model as a service: deadlines, the cross-request batcher, idle-core lending.

No Flask: the API hands it plain pairs and the time each request arrived, and maps its
errors (:mod:`nli_service.serving.errors`) to HTTP statuses.
"""
