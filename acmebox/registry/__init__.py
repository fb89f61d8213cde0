"""The registry side of acmebox, a product of its own beside the certificates: the token service
the registry's `auth: token` asks, so the registry is publicly readable while push and delete need
a login. The ACME modules never import this package; the service wires it in through
`TokenService.from_settings` and `TokenService.install`.

- token.py      the `/auth/token` endpoint: scopes, grants, signed JWTs, login throttling
- htpasswd.py   the users (bcrypt htpasswd file)
- acl.py        repository name grammar and the user -> repository patterns
- proxies.py    trusted reverse proxies and the per-client throttling key
- signing.py    the signing key and the certificate the registry trusts
"""
