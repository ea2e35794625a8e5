"""The console's pages: one `APIRouter` per page, mounted by `engine.console.install`."""
