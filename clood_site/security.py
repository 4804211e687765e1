"""Response headers that Django's SecurityMiddleware does not set: a Content-Security-Policy that allows only
clood's own scripts, styles, images and websocket (pages load nothing from elsewhere: clood works offline), and a
Permissions-Policy that turns off browser features no page uses."""

from django.utils.deprecation import MiddlewareMixin

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",  # the admin's templates use style attributes
        "img-src 'self' data:",
        "connect-src 'self'",  # same-origin fetch and websocket
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
PERMISSIONS_POLICY = "camera=(), microphone=(), geolocation=(), payment=(), usb=()"


class SecurityHeadersMiddleware(MiddlewareMixin):  # the mixin keeps the stack async (catfights run in its loop)
    def process_response(self, request, response):
        response.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.setdefault("Permissions-Policy", PERMISSIONS_POLICY)
        return response
