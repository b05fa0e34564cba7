// The one place that includes QCustomPlot. Its header uses the Qt keywords `signals`, `slots`, `emit` and `foreach`;
// mapping them here keeps it compiling should QT_NO_KEYWORDS ever be defined for a TU (toolchain.md, pitfall 2).
#pragma once

#ifdef QT_NO_KEYWORDS
#  pragma push_macro("signals")
#  pragma push_macro("slots")
#  pragma push_macro("emit")
#  pragma push_macro("foreach")
#  define signals Q_SIGNALS
#  define slots Q_SLOTS
#  define emit Q_EMIT
#  define foreach Q_FOREACH
#  include <qcustomplot.h>
#  pragma pop_macro("foreach")
#  pragma pop_macro("emit")
#  pragma pop_macro("slots")
#  pragma pop_macro("signals")
#else
#  include <qcustomplot.h>
#endif
