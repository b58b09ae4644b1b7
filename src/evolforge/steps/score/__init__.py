"""The score step: IFD and IC-IFD from the scorer model (``step.run``)."""
