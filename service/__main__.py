"""`python -m service`: run the API with uvicorn on the configured host and port."""

import os

import uvicorn


def main() -> None:
    uvicorn.run(
        "service.app:app",
        host=os.environ.get("ELASTICSR_HOST", "127.0.0.1"),
        port=int(os.environ.get("ELASTICSR_PORT", "8000")),
    )


if __name__ == "__main__":
    main()
