      *================================================================*
      * FRAME-HEADER: PRECEDES THE BODY OF EVERY TERMINAL FRAME (40 B) *
      * FRAME-TYPE: T001 TERMINAL START, T031 BET, T033 PAYMENT,       *
      *             T034 CANCELLATION.  DIRECTION: Q REQUEST (FROM THE *
      *             TERMINAL), R RESPONSE (FROM THE CENTRAL SYSTEM).   *
      *================================================================*
       01  FRAME-HEADER.
           05  FRAME-TYPE              PIC X(4).
           05  DIRECTION               PIC X.
               88  IS-REQUEST                    VALUE 'Q'.
               88  IS-RESPONSE                   VALUE 'R'.
           05  TERMINAL-ID             PIC X(8).
           05  SEQUENCE-NO             PIC 9(9) COMP.
           05  FRAME-TS.
      *        YYYYMMDDHHMMSS, THEN MILLISECONDS
               10  TS-DATETIME         PIC 9(14).
               10  TS-MILLIS           PIC 9(3).
           05  BODY-LENGTH             PIC 9(4) COMP.
           05  FILLER                  PIC X(4).
