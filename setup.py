"""igbeam: Integrated Gradients attributions for whole datasets, as an Apache Beam pipeline."""

from setuptools import find_packages, setup

setup(
    name="igbeam",
    version="0.1.0",
    description="Integrated Gradients attributions for TFRecord datasets on Apache Beam.",
    python_requires=">=3.11,<3.12",
    packages=find_packages(
        include=[
            "attribution",
            "attribution.*",
            "pipeline",
            "pipeline.*",
            "transforms",
            "transforms.*",
        ]
    ),
    include_package_data=True,
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "tfx-bsl==1.21.*",
        "apache-beam[gcp]==2.77.*",
        "pyarrow",
        "numpy",
        "pyyaml",
        "matplotlib>=3.8",
    ],
    extras_require={
        # DaskRunner: a dask.distributed cluster (LocalCluster when no scheduler is named)
        "dask": ["apache-beam[dask]==2.77.*"],
        "test": ["pytest", "pytest-timeout", "ruff", "pandas", "apache-beam[dask]==2.77.*"],
    },
    entry_points={"console_scripts": ["igbeam=pipeline.cli:main"]},
)
